"""Common SOP class and transfer syntax groups (the seed's presets).

Values are the DICOM standard's keywords (PS3.6 Annex A), which every option
taking SOP classes or transfer syntaxes accepts, as do UIDs.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final, TypedDict


class CommonSopClasses(TypedDict):
    ct: list[str]
    mr: list[str]
    ultrasound: list[str]
    pet: list[str]
    xray: list[str]
    mammography: list[str]
    secondary_capture: list[str]
    radiation_therapy: list[str]
    documents: list[str]
    structured_reports: list[str]
    all_imaging: list[str]
    all: list[str]


class CommonTransferSyntaxes(TypedDict):
    uncompressed: list[str]
    jpeg: list[str]
    jpeg_ls: list[str]
    jpeg2000: list[str]
    rle: list[str]
    mpeg: list[str]
    all_compressed: list[str]
    all: list[str]


CT: Final = ("CTImageStorage", "EnhancedCTImageStorage")
MR: Final = ("MRImageStorage", "EnhancedMRImageStorage")
# Ultrasound Image Storage is 1.2.840.10008.5.1.4.1.1.6.1 (not the multi-frame UID).
ULTRASOUND: Final = ("UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage")
PET: Final = (
    "PositronEmissionTomographyImageStorage",
    "EnhancedPETImageStorage",
    "LegacyConvertedEnhancedPETImageStorage",
)
XRAY: Final = (
    "ComputedRadiographyImageStorage",
    "DigitalXRayImageStorageForPresentation",
    "XRayAngiographicImageStorage",
)
MAMMOGRAPHY: Final = (
    "DigitalMammographyXRayImageStorageForPresentation",
    "DigitalMammographyXRayImageStorageForProcessing",
    "BreastTomosynthesisImageStorage",
    "BreastProjectionXRayImageStorageForPresentation",
    "BreastProjectionXRayImageStorageForProcessing",
)
SECONDARY_CAPTURE: Final = (
    "SecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage",
)
RADIATION_THERAPY: Final = (
    "RTImageStorage",
    "RTDoseStorage",
    "RTStructureSetStorage",
    "RTPlanStorage",
)
DOCUMENTS: Final = (
    "EncapsulatedPDFStorage",
    "EncapsulatedCDAStorage",
    "EncapsulatedSTLStorage",
    "EncapsulatedOBJStorage",
)
STRUCTURED_REPORTS: Final = (
    "BasicTextSRStorage",
    "EnhancedSRStorage",
    "ComprehensiveSRStorage",
)
ALL_IMAGING: Final = CT + MR + ULTRASOUND + PET + XRAY + MAMMOGRAPHY
ALL_SOP_CLASSES: Final = (
    ALL_IMAGING
    + SECONDARY_CAPTURE
    + RADIATION_THERAPY
    + DOCUMENTS
    + STRUCTURED_REPORTS
    + ("Verification",)
)

UNCOMPRESSED: Final = ("ImplicitVRLittleEndian", "ExplicitVRLittleEndian", "ExplicitVRBigEndian")
JPEG: Final = ("JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLossless", "JPEGLosslessSV1")
JPEG_LS: Final = ("JPEGLSLossless", "JPEGLSNearLossless")
JPEG2000: Final = ("JPEG2000Lossless", "JPEG2000")
RLE: Final = ("RLELossless",)
MPEG: Final = ("MPEG2MPML", "MPEG2MPHL", "MPEG4HP41", "MPEG4HP41BD")
ALL_COMPRESSED: Final = JPEG + JPEG_LS + JPEG2000 + RLE + MPEG
ALL_TRANSFER_SYNTAXES: Final = UNCOMPRESSED + ALL_COMPRESSED + ("DeflatedExplicitVRLittleEndian",)

#: Read-only views of the presets; ``get_common_*()`` return fresh copies.
COMMON_SOP_CLASSES: Final = MappingProxyType(
    {
        "ct": CT,
        "mr": MR,
        "ultrasound": ULTRASOUND,
        "pet": PET,
        "xray": XRAY,
        "mammography": MAMMOGRAPHY,
        "secondary_capture": SECONDARY_CAPTURE,
        "radiation_therapy": RADIATION_THERAPY,
        "documents": DOCUMENTS,
        "structured_reports": STRUCTURED_REPORTS,
        "all_imaging": ALL_IMAGING,
        "all": ALL_SOP_CLASSES,
    }
)
COMMON_TRANSFER_SYNTAXES: Final = MappingProxyType(
    {
        "uncompressed": UNCOMPRESSED,
        "jpeg": JPEG,
        "jpeg_ls": JPEG_LS,
        "jpeg2000": JPEG2000,
        "rle": RLE,
        "mpeg": MPEG,
        "all_compressed": ALL_COMPRESSED,
        "all": ALL_TRANSFER_SYNTAXES,
    }
)

#: Friendlier names accepted for transfer syntaxes besides the standard
#: keywords (the seed's documentation uses some of them).
TRANSFER_SYNTAX_ALIASES: Final = MappingProxyType(
    {
        "JPEGBaseline": "1.2.840.10008.1.2.4.50",
        "JPEGExtended": "1.2.840.10008.1.2.4.51",
        "JPEGLosslessNonHierarchical14": "1.2.840.10008.1.2.4.57",
        "JPEGLosslessFirstOrder": "1.2.840.10008.1.2.4.70",
        "JPEGLSLossy": "1.2.840.10008.1.2.4.81",
        "JPEG2000Lossy": "1.2.840.10008.1.2.4.91",
        "RLE": "1.2.840.10008.1.2.5",
        "Deflated": "1.2.840.10008.1.2.1.99",
    }
)


def get_common_sop_classes() -> CommonSopClasses:
    """SOP class presets by category, as lists of standard keywords."""
    return CommonSopClasses(
        ct=list(CT),
        mr=list(MR),
        ultrasound=list(ULTRASOUND),
        pet=list(PET),
        xray=list(XRAY),
        mammography=list(MAMMOGRAPHY),
        secondary_capture=list(SECONDARY_CAPTURE),
        radiation_therapy=list(RADIATION_THERAPY),
        documents=list(DOCUMENTS),
        structured_reports=list(STRUCTURED_REPORTS),
        all_imaging=list(ALL_IMAGING),
        all=list(ALL_SOP_CLASSES),
    )


def get_common_transfer_syntaxes() -> CommonTransferSyntaxes:
    """Transfer syntax presets by category, as lists of standard keywords."""
    return CommonTransferSyntaxes(
        uncompressed=list(UNCOMPRESSED),
        jpeg=list(JPEG),
        jpeg_ls=list(JPEG_LS),
        jpeg2000=list(JPEG2000),
        rle=list(RLE),
        mpeg=list(MPEG),
        all_compressed=list(ALL_COMPRESSED),
        all=list(ALL_TRANSFER_SYNTAXES),
    )
