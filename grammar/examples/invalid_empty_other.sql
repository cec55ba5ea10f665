-- error: OTHER matches no row
SELECT * FROM samples MIX BY language WITH ((JavaScript, HTML, Python) 1, OTHER 1)
