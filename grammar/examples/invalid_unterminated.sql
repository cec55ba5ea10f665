-- error: cannot tokenize
SELECT * FROM samples MIX BY language WITH ('JavaScript 1)
