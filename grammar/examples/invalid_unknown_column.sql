-- error: unknown column 'lang'
SELECT * FROM samples MIX BY lang WITH (JavaScript 1)
