-- error: Did you mean 'repeat'?
SELECT * FROM samples MIX BY language WITH (JavaScript 1) SETTINGS (on_exhausted = 'repaet')
