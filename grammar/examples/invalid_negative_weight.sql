-- error: is negative
SELECT * FROM samples MIX BY language WITH (JavaScript 1, HTML -0.5)
