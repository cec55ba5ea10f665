-- plain LIMIT n in a MIX statement means LIMIT n SAMPLES
SELECT * FROM samples MIX BY language WITH (JavaScript 1, OTHER 1) LIMIT 50
