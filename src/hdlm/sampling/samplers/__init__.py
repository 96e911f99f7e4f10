"""The built-in samplers, one file each. Importing this package registers every module in it
(`sampling.registry.register`): a new file here is a new sampler, with nothing else to edit."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
