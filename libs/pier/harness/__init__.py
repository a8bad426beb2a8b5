"""What runs inside an instance: loads the user's code once and serves it over HTTP.

Depends on the standard library, msgspec and aiohttp only, because it ships into model images.
"""
