"""StyleRig Lite: rigging a StyleGAN with a 3D morphable face model.

The package behind the executable book. One concept per module:

- ``assets``       registry of third-party files, hashed download, cache
- ``checks``       shape / value assertions with clear messages
- ``morphable``    the ICT-FaceKit face model and the parameter layout
- ``camera``       the perspective camera and its conventions
- ``shading``      second-order spherical-harmonics Lambertian shading
- ``render``       differentiable rasterizer (ours) and the pytorch3d reference
"""

__version__ = "0.1.0"
