"""S3 storage (the seed's S3 example): objects go to a bucket under
{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm.

    DICOM_S3_BUCKET=dicom-archive AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
    AWS_ENDPOINT_URL=http://minio.local:9000 python examples/s3.py
"""

import os

from dicom_storescp import S3Config, StoreScp

s3_config: S3Config = {
    "bucket": os.environ.get("DICOM_S3_BUCKET", "dicom-archive"),
    "access_key": os.environ["AWS_ACCESS_KEY_ID"],
    "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"],
    "region": os.environ.get("AWS_REGION", "us-east-1"),
}
if "AWS_ENDPOINT_URL" in os.environ:  # MinIO or another S3-compatible server
    s3_config["endpoint"] = os.environ["AWS_ENDPOINT_URL"]

receiver = StoreScp(
    port=int(os.environ.get("DICOM_PORT", "4446")),
    storage_backend="S3",
    s3_config=s3_config,
)

receiver.add_event_listener("OnFileStored", lambda data: print("Uploaded:", data["uri"]))

receiver.listen()
