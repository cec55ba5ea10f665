-- error: listed twice
SELECT * FROM samples MIX BY language WITH ((JavaScript, HTML) 0.5, 'HTML' 0.5)
