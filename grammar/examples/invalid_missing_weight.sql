-- error: expected a weight
SELECT * FROM samples MIX BY language WITH (JavaScript, HTML 1)
