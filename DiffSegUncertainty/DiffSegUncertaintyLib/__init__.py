"""DiffSegUncertainty's library: ``engine`` (torch, no Slicer) and ``scene`` (MRML through slicer-core,
no Qt). Data flows one way: engine -> scene -> the Slicer module file."""
