"""NetScaler side: NITRO client, object models, errors and CLI-command rendering."""
