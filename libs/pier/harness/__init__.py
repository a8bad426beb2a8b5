"""What runs inside an instance: loads the user's code once and serves it over HTTP.

Depends on the standard library, msgspec, httptools and uvloop only, because it ships into model images
(services/builder/environments.py HARNESS_PACKAGES installs them into every environment).
"""
