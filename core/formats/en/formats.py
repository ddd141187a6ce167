"""Date formats for English (the admin's language): times to the second, not the minute, so
that an operator can order what happened. (The attempts timeline shows milliseconds.)"""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
TIME_FORMAT = "H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
