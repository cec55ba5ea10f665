-- error: MIX needs the catalog's samples view
SELECT * FROM sources MIX BY name WITH (a 1)
