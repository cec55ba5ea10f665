-- error: Did you mean 'Python'?
SELECT * FROM samples MIX BY language WITH (JavaScript 1, Pyhton 1)
