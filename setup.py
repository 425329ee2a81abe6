"""The one compiled piece: `pipeline.clips._jpegwindow` (partial JPEG decoding against the system's libjpeg-turbo).

Optional: without a C compiler or libjpeg-turbo's headers (Debian: libjpeg62-turbo-dev) the install
goes on without it, and the CPU loader decodes whole frames with simplejpeg instead
(`pipeline.clips.host.WINDOW_DECODE` says which ran).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("pipeline.clips._jpegwindow", ["pipeline/clips/_jpegwindow.c"], libraries=["jpeg"], optional=True)
    ]
)
