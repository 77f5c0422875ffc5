"""The resident ID card reader (居民身份证阅读器): the SAM serial protocol and the reader over a port."""
