"""Code-as-action tasks: prompt -> completion -> sandboxed run -> verified reward."""
