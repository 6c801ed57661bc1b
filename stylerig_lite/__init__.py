"""StyleRig Lite: rigging a StyleGAN with a 3D morphable face model.

The package behind the executable book. One concept per module, and the
modules stand on floors: a module imports only from its own floor and the
floors below it (``tests/test_architecture.py`` reads this list and checks it,
along with "no import cycles", "every module has ``__all__``" and "no
``_private`` name imported across modules"). Each entry names the chapter that
explains the module; each chapter names the modules it calls.

Floor 0, base: what everything else stands on.
  - ``checks``           shape / value assertions with clear messages
  - ``config``           the preset idiom: ``PRESETS`` + ``get_config(name, **overrides)``
  - ``io_utils``         atomic writes, sha256 of files, PNG encoders, ``to_cpu``
  - ``seeding``          every seed rule: ``derive_seed``, batch order, seed -> latent, ``BatchShard``
  - ``params``           the 196-value parameter layout, ``FaceParams``, Euler angles, the rig components (ch. 1)
  - ``assets``           registry of third-party files, hashed download, cache (ch. 1, credits)
  - ``devices``          ``--device``, CUDA settings, the CPU allocator (appendices: distributed, performance)
  - ``distributed``      data-parallel training under ``torchrun`` (appendix: distributed)

Floor 1, 3DMM: the face model, the camera and the renderers.
  - ``camera``           the perspective camera and its conventions (ch. 3)
  - ``shading``          second-order spherical-harmonics Lambertian shading; light as angles (ch. 1)
  - ``shading_jit``      its normals and shading as compiled loops (Numba, optional): the same numbers, faster (ch. 3)
  - ``morphable``        the ICT-FaceKit face model, our albedo model, random parameters (ch. 1)
  - ``rasterize``        our vectorized differentiable rasterizer (ch. 3)
  - ``rasterize_jit``    its z-buffer and the projection as compiled loops (Numba, optional): the same ids, faster (ch. 3)
  - ``render_pytorch3d`` the PyTorch3D reference backend (ch. 3)
  - ``render``           ``render_mesh``: shading + rasterizer + compositing (ch. 3)
  - ``render_jit``       a differentiated render's shading and interpolation as compiled loops, forward and backward (ch. 3)
  - ``face_render``      ``render_face``: a face model's parameters to an image (ch. 1, 3, 4)
  - ``render_points``    the point-splat preview that follows the editor's sliders (ch. 6)
  - ``losses``           the paper's rendering loss: photometric + landmarks + priors (ch. 3-5)
  - ``fitting``          analysis by synthesis: fit parameters to one image (ch. 4)
  - ``world``            FaceWorld: random parameters rendered with hair, clothes, backgrounds (appendix A)

Floor 2, networks: the models, each one readable file (``stylegan2`` a package of four).
  - ``stylegan2``        StyleGAN2: ops, networks, checkpoint, legacy import (ch. 2)
  - ``mobilestylegan``   the photoreal MobileStyleGAN (FFHQ), ported from OpenVINO IR (ch. 2)
  - ``reconstruction``   F, the face reconstruction network (ch. 4)
  - ``latent_f``         the paper's F: W+ latents -> 3DMM parameters, an MLP (ch. 4)
  - ``rignet``           RigNet (ch. 5)
  - ``encoder``          the photo encoder: an aligned face crop -> a first guess of its w (ch. 7)
  - ``baselines``        the linear latent-direction baseline, a peer of RigNet (ch. 2, 5)
  - ``pretrained``       the embedded, hash-checked weights of all of them (ch. 2, 4-7)

Floor 3, data: what the networks are trained and judged on.
  - ``datasets``         FaceWorld shards with exact labels (ch. 4, appendix A)
  - ``corpus``           the (w, I_w) corpus of the frozen generator (ch. 2, 5)
  - ``landmarks``        dlib's 68 iBUG landmarks, the latent F's sparse supervision (ch. 4)

Floor 4, evaluation: control, preservation and quality, measured.
  - ``judge``            the independent judge: MediaPipe landmarks read by geometry, calibrated (ch. 5)
  - ``identity``         identity distance with dlib's face descriptor (ch. 5)
  - ``evaluate``         the evaluation pairs, the method table, the scores (ch. 2, 4, 5)
  - ``evaluate_f``       the latent F scored on held-out pairs: landmark NME, colour error, yaw (ch. 4)

Floor 5, training: the loops behind the commands, resumable and distributed.
  - ``train_gan``        ``stylerig-lite train-gan`` (ch. 2)
  - ``train_f``          ``stylerig-lite train-f`` (ch. 4)
  - ``train_latent_f``   ``stylerig-lite train-latent-f``: the latent F, self-supervised (ch. 4)
  - ``train_rignet``     ``stylerig-lite train-rignet`` (ch. 5)
  - ``train_encoder``    ``stylerig-lite train-encoder``: the photo encoder, on a photoreal corpus (ch. 7)

Floor 6, app: what a reader sees and touches.
  - ``editing``          the slider editor for Jupyter, Colab and Voila (ch. 6)
  - ``photo``            edit a photograph: align, embed into W+, rig, paste back (ch. 7)
  - ``plotting``         figure helpers of every chapter (ch. 1-6)

Floor 7, tools: entry points.
  - ``bench``            ``python -m stylerig_lite.bench``: speed as ratios, side by side (ch. 3, 6)
  - ``cli``              the ``stylerig-lite`` command (every chapter's long runs)
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
