"""How good a result is: image measures, the sphere's measures, ``score`` and the preview sheet."""
