SELECT * FROM samples
WHERE quality > 0.1
MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2)
