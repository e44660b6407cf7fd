//! `shoal firmware publish` against the local stack: the image is signed by KMS, the signature
//! verifies with the key's public key (checked again here, independently), the object and the
//! record are read back; older versions are refused unless downgraded with a reason, another
//! build of a published version always (SemVer precedence ignores build metadata); a key that
//! cannot sign leaves nothing behind.

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use base64::Engine as _;
use shoal_aws::client::{AwsResultExt, ClientFactory};
use shoal_aws::config::BucketName;
use shoal_aws::rollout_table::RolloutTable;
use shoal_cli::firmware::{PublishError, PublishRequest, Publisher};
use shoal_cli::rollout::{StartRequest, start};
use shoal_core::rollout::image::{sha256, verify_signature};
use shoal_core::rollout::phases::PlanSettings;
use shoal_core::rollout::version::PublishRefusal;
use shoal_integration_tests::firmware::registry;
use shoal_integration_tests::local::unique_name;

fn request(version: &str, downgrade: Option<&str>) -> PublishRequest {
    PublishRequest {
        model: "th-v2".parse().unwrap(),
        hardware: "rev-b".parse().unwrap(),
        version: version.parse().unwrap(),
        min_version: Some("1.0.0".parse().unwrap()),
        downgrade_reason: downgrade.map(str::to_owned),
    }
}

async fn objects(factory: &ClientFactory, bucket: &BucketName) -> usize {
    factory
        .s3()
        .list_objects_v2()
        .bucket(bucket.as_str())
        .send()
        .await
        .aws("s3", "ListObjectsV2")
        .unwrap()
        .key_count()
        .unwrap_or_default() as usize
}

#[tokio::test]
async fn publish_signs_verifies_uploads_records_and_refuses_rollback() {
    let (factory, table, bucket, signing) =
        registry(KeySpec::EccNistP256, KeyUsageType::SignVerify).await;
    let publisher = Publisher {
        factory: &factory,
        table: &table,
        bucket: &bucket,
        key: &signing,
    };

    let image = b"\x7fELF shoal th-v2 firmware 1.9.0".repeat(500);
    let record = publisher
        .publish(&image, &request("1.9.0", None))
        .await
        .unwrap();
    assert_eq!(record.size, image.len() as u64);
    assert_eq!(
        record.sha256,
        shoal_core::rollout::image::hex(&sha256(&image))
    );

    // The signature verifies with the key's public key, as a device would check it.
    let public = factory
        .kms()
        .get_public_key()
        .key_id(signing.as_str())
        .send()
        .await
        .aws("kms", "GetPublicKey")
        .unwrap()
        .public_key
        .unwrap()
        .into_inner();
    let signature = base64::engine::general_purpose::STANDARD
        .decode(&record.signature)
        .unwrap();
    assert_eq!(
        verify_signature(&public, &sha256(&image), &signature),
        Ok(())
    );
    assert!(verify_signature(&public, &sha256(b"tampered"), &signature).is_err());

    // The object is the image, byte for byte.
    let object = factory
        .s3()
        .get_object()
        .bucket(bucket.as_str())
        .key(&record.s3_key)
        .send()
        .await
        .aws("s3", "GetObject")
        .unwrap();
    assert_eq!(
        object.body.collect().await.unwrap().into_bytes().as_ref(),
        image.as_slice()
    );

    // 1.10.0 is newer than 1.9.0 (semver, not string order).
    publisher
        .publish(b"1.10.0 image", &request("1.10.0", None))
        .await
        .unwrap();
    let model = "th-v2".parse().unwrap();
    let hardware = "rev-b".parse().unwrap();
    assert_eq!(
        table
            .current(&model, &hardware)
            .await
            .unwrap()
            .unwrap()
            .to_string(),
        "1.10.0"
    );

    // Anti-rollback: 1.9.5 is refused before anything is uploaded; 1.10.0 again, or another
    // build of it (build metadata is not precedence), is already published.
    let before = objects(&factory, &bucket).await;
    let err = publisher
        .publish(b"old", &request("1.9.5", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Refused(PublishRefusal::NotNewer { .. })),
        "{err}"
    );
    for version in ["1.10.0", "1.10.0+build.100", "1.10.0+build.41"] {
        let err = publisher
            .publish(b"same", &request(version, None))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PublishError::Refused(PublishRefusal::SamePrecedence { .. })
            ),
            "{version}: {err}"
        );
    }
    assert_eq!(objects(&factory, &bucket).await, before);
    // The registry itself refuses a second build of a version (a racing publisher's write).
    let mut build = record.clone();
    build.version = "1.9.0+build.7".parse().unwrap();
    assert!(!table.insert(&build).await.unwrap());

    // An explicit downgrade with a reason is published and says why.
    let downgraded = publisher
        .publish(
            b"1.9.5 image",
            &request("1.9.5", Some("1.10.0 drops Wi-Fi on rev-b")),
        )
        .await
        .unwrap();
    assert_eq!(
        downgraded.downgrade_reason.as_deref(),
        Some("1.10.0 drops Wi-Fi on rev-b")
    );
    // The same version twice is refused even as a downgrade: images are immutable.
    let again = publisher
        .publish(b"other bytes", &request("1.9.5+rebuild", Some("again")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            PublishError::Refused(PublishRefusal::SamePrecedence { .. })
        ),
        "{again}"
    );
    let versions: Vec<String> = table
        .images(&model, &hardware)
        .await
        .unwrap()
        .iter()
        .map(|i| i.version.to_string())
        .collect();
    assert_eq!(versions, ["1.9.0", "1.9.5", "1.10.0"]);

    // A rollout named by the bare version records the version as published, build included
    // (what devices report); a rollback to another build of it is no rollback.
    publisher
        .publish(b"1.11.0 image", &request("1.11.0+build.42", None))
        .await
        .unwrap();
    let rollouts = RolloutTable::new(factory.dynamodb(), unique_name("rollouts").parse().unwrap());
    rollouts.ensure_exists().await.unwrap();
    let start_request = |version: &str, rollback_to: Option<&str>| StartRequest {
        id: Some(unique_name("r")),
        model: "th-v2".parse().unwrap(),
        hardware: "rev-b".parse().unwrap(),
        version: version.parse().unwrap(),
        rollback_to: rollback_to.map(|v| v.parse().unwrap()),
        settings: PlanSettings::default(),
        max_new_per_minute: 100,
    };
    let refused = start(
        &rollouts,
        &table,
        start_request("1.11.0", Some("1.11.0+build.7")),
        0,
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("below 1.11.0+build.42"),
        "{refused}"
    );
    let rollout = start(&rollouts, &table, start_request("1.11.0", None), 0)
        .await
        .unwrap();
    assert_eq!(rollout.version.to_string(), "1.11.0+build.42");
    // The default id names the build without MQTT's `+` wildcard (the pause alert's topic).
    let unnamed = StartRequest {
        id: None,
        ..start_request("1.11.0", None)
    };
    let other_table =
        RolloutTable::new(factory.dynamodb(), unique_name("rollouts").parse().unwrap());
    other_table.ensure_exists().await.unwrap();
    let named = start(&other_table, &table, unnamed, 1_795_600_000_000)
        .await
        .unwrap();
    assert_eq!(named.id.as_str(), "th-v2-rev-b-1.11.0_build.42-1795600000");
    assert_eq!(rollout.rollback_version.unwrap().to_string(), "1.10.0");
}

#[tokio::test]
async fn a_key_that_cannot_sign_leaves_nothing_behind() {
    let (factory, table, bucket, symmetric) =
        registry(KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt).await;
    let publisher = Publisher {
        factory: &factory,
        table: &table,
        bucket: &bucket,
        key: &symmetric,
    };
    let err = publisher
        .publish(b"image", &request("2.0.0", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Aws(ref e) if e.operation == "Sign"),
        "{err}"
    );
    assert_eq!(objects(&factory, &bucket).await, 0);
    assert!(
        table
            .images(&"th-v2".parse().unwrap(), &"rev-b".parse().unwrap())
            .await
            .unwrap()
            .is_empty()
    );
}
