"""One date format everywhere in the admin, to the second (ISO 8601 order, UTC as the project's time zone).

Django localizes dates with the active language's formats (English: "Dec. 5, 2026, 4:21 p.m.",
minutes only), ahead of the DATETIME_FORMAT setting; FORMAT_MODULE_PATH puts this module first.
"""

DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i:s"
TIME_FORMAT = "H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
