-- error: SCHEDULE steps must increase
SELECT * FROM samples MIX BY language WITH SCHEDULE (AT STEP 0 (JavaScript 1, OTHER 1), AT STEP 100 (JavaScript 1, OTHER 2), AT STEP 50 (JavaScript 2, OTHER 1))
