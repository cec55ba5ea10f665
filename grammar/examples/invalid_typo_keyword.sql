-- error: Did you mean WITH?
SELECT * FROM samples MIX BY language WTIH (JavaScript 1)
