"""Which objects are accepted (the seed's SOP class and transfer syntax
sections): only CT, MR and ultrasound images, uncompressed or JPEG.

    python examples/syntaxes.py         # port 4446, or DICOM_PORT / DICOM_OUT_DIR
"""

import os

from dicom_storescp import StoreScp, get_common_sop_classes, get_common_transfer_syntaxes

sop_classes = get_common_sop_classes()
transfer_syntaxes = get_common_transfer_syntaxes()

receiver = StoreScp(
    port=int(os.environ.get("DICOM_PORT", "4446")),
    out_dir=os.environ.get("DICOM_OUT_DIR", "./dicom-storage"),
    abstract_syntax_mode="Custom",
    abstract_syntaxes=[*sop_classes["ct"], *sop_classes["mr"], *sop_classes["ultrasound"]],
    transfer_syntax_mode="Custom",
    transfer_syntaxes=[*transfer_syntaxes["uncompressed"], *transfer_syntaxes["jpeg"]],
)

receiver.add_event_listener("OnFileStored", lambda data: print("File received:", data["file"]))
receiver.add_event_listener(
    "OnAssociationRejected", lambda data: print("Rejected:", data["reason"])
)

receiver.listen()
