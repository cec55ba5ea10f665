-- error: GROUP BY cannot be combined with MIX BY
SELECT language, count(*) FROM samples GROUP BY language MIX BY language WITH (JavaScript 1)
