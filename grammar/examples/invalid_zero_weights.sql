-- error: all weights are zero
SELECT * FROM samples MIX BY language WITH (JavaScript 0, HTML 0)
