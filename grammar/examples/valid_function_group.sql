SELECT * FROM samples MIX BY lower(language) WITH (javascript 1, html 1, python 1)
