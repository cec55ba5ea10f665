-- error: Did you mean 'seed'?
SELECT * FROM samples MIX BY language WITH (JavaScript 1) SETTINGS (sed = 3)
