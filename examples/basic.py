"""Basic usage (the seed's first example): receive into ./dicom-storage and
print every stored file. Stop with Ctrl-C.

    python examples/basic.py            # port 4446, or DICOM_PORT / DICOM_OUT_DIR
"""

import os

from dicom_storescp import StoreScp

receiver = StoreScp(
    port=int(os.environ.get("DICOM_PORT", "4446")),
    ae_title="MY-SCP",
    out_dir=os.environ.get("DICOM_OUT_DIR", "./dicom-storage"),
    verbose=True,
)

receiver.add_event_listener("OnFileStored", lambda data: print("File received:", data["file"]))

receiver.listen()
