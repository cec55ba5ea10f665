-- error: Did you mean TOKENS?
SELECT * FROM samples MIX BY language WITH (JavaScript 1) LIMIT 10 TOKEN
