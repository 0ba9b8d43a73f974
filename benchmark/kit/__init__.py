"""The method kit: everything a method module may import from the harness, and nothing else.

* :mod:`benchmark.kit.episodes`: episodes (pure functions of a key), samplers and fixed episode sets;
* :mod:`benchmark.kit.backbones` and :mod:`benchmark.kit.backbone_table`: the shared backbones and their table;
* :mod:`benchmark.kit.profiles`: the run-length profiles (``smoke``, ``quick``, ``paper``);
* :mod:`benchmark.kit.context`: the :class:`~benchmark.kit.context.Setting` a method is evaluated on and the
  :class:`~benchmark.kit.context.Context` it is built with.

The kit reaches no results folder and no other room of the harness (``tests/test_rooms.py`` pins both rules:
``methods/*`` import only this kit, ``methods.base`` and ``methods.blocks``). Nothing is re-exported here, so
``--help`` can read the torch-free tables (profiles, backbones) without importing PyTorch.
"""
