-- error: Did you mean 'language'?
SELECT * FROM samples WHERE lnguage = 'HTML' MIX BY license WITH (MIT 1, CC 1)
