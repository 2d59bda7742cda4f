"""The fleet feature (``sculpt-host fleet ...``): fleet files naming boards with tags (:mod:`host.fleet.file`),
fleet benchmark runs over many boards with a resumable result log (:mod:`host.fleet.runner`), and their
reports (:mod:`host.fleet.report`). Built on the transport in :mod:`host.devices`, which does not import it.
"""
