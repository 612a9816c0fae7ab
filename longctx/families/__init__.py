"""Model-family adapters (`longctx.models.family.ModelFamily`), one module per family, each
registered by model type in `longctx.registry.FAMILIES`. Only the registry names them: the
engine, the request code and the loader reach a family through the adapter's methods."""
