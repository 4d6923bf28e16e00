"""The library every lsfn function imports: Label Studio protocol, label config, coordinates,
brush RLE and result builders. No model code lives here."""
