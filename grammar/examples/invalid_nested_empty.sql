-- error: has no rows, so its nested MIX BY
SELECT * FROM samples WHERE language <> 'Python' MIX BY language WITH (JavaScript 1, Python 1 MIX BY license WITH (MIT 1, CC 1))
