"""Render farms: the Flamenco client, beside the ``equi360`` job type it submits to (``equi360.js``)."""
