"""Real servers on 127.0.0.1 that stand in for the outside world in tests.

- :mod:`.cloudimages`: a cloud-images.ubuntu.com look-alike (real tree, real GPG key);
- :mod:`.maas`: a MAAS region's API 2.0 (OAuth, boot resources, chunked uploads);
- :mod:`.aptrepo`: a signed apt repository built from .debs made for the test;
- :mod:`.proxy`: an HTTP forward proxy that logs what it forwards.
"""
