WITH w AS (SELECT * FROM (VALUES ('JavaScript', 2.0), ('HTML', 1.0), ('Python', 0.5)) t(lang, boost))
SELECT s.language, s.quality * w.boost AS score
FROM samples s JOIN w ON s.language = w.lang
MIX BY s.language WITH (JavaScript 1, HTML 1, Python 1)
ORDER BY score
