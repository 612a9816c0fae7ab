"""Methods used only by tests, loaded by workers through the "module:Class" plug-in path."""
