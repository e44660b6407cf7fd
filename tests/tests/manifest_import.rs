//! `shoal manifest import` against the local DynamoDB: all or nothing, every bad line reported,
//! batches of 25 with everything read back.

use std::collections::BTreeMap;

use shoal_aws::manifest_table::ManifestTable;
use shoal_cli::manifest::{ImportError, import};
use shoal_core::provisioning::{DeviceStatus, Serial};
use shoal_integration_tests::local::{self, unique_name};

const HEADER: &str = "serial,model,batch,thing_group,attributes\n";

async fn table() -> ManifestTable {
    let factory = local::factory().await;
    let table = ManifestTable::new(factory.dynamodb(), unique_name("manifest").parse().unwrap());
    table.ensure_exists().await.unwrap();
    table
}

fn csv(rows: impl IntoIterator<Item = String>) -> String {
    let mut text = HEADER.to_owned();
    for row in rows {
        text.push_str(&row);
        text.push('\n');
    }
    text
}

#[tokio::test]
async fn a_file_with_bad_rows_writes_nothing_and_names_each_line() {
    let table = table().await;
    let text = csv([
        "SN-A1,th-v2,b1,,".to_owned(),
        "SN A2,th-v2,b1,,".to_owned(),
        "SN-A3,th-v2,,,".to_owned(),
        "SN-A4,th-v2,b1,,".to_owned(),
    ]);
    let Err(ImportError::Rows(errors)) = import(&table, &text, |_| {}).await else {
        panic!("bad rows must refuse the file");
    };
    let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 4]);
    for serial in ["SN-A1", "SN-A4"] {
        assert_eq!(
            table.get(&Serial::parse(serial).unwrap()).await.unwrap(),
            None,
            "{serial} must not be written"
        );
    }
}

#[tokio::test]
async fn sixty_devices_go_in_batches_of_25_and_read_back() {
    let table = table().await;
    let rows = (0..60).map(|i| format!("SN-{i:04},th-v2,2026-11,greenhouse,site=lyon;slot={i}"));
    let mut progress = Vec::new();
    let imported = import(&table, &csv(rows), |n| progress.push(n))
        .await
        .unwrap();
    assert_eq!(imported, 60);
    assert_eq!(progress, vec![25, 25, 10]);
    for i in [0, 24, 25, 59] {
        let entry = table
            .get(&Serial::parse(&format!("SN-{i:04}")).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.status, DeviceStatus::Pending);
        assert_eq!(entry.thing_group.as_deref(), Some("greenhouse"));
        assert_eq!(
            entry.attributes,
            BTreeMap::from([
                ("site".to_owned(), "lyon".to_owned()),
                ("slot".to_owned(), i.to_string())
            ])
        );
    }

    // Importing a serial that is already there refuses the file and names the line.
    let again = csv([
        "SN-9999,th-v2,b2,,".to_owned(),
        "SN-0007,th-v2,b2,,".to_owned(),
    ]);
    let Err(ImportError::Rows(errors)) = import(&table, &again, |_| {}).await else {
        panic!("existing serials must refuse the file");
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 3);
    assert!(
        errors[0]
            .reason
            .contains("already in the manifest (pending)"),
        "{}",
        errors[0]
    );
    assert_eq!(
        table.get(&Serial::parse("SN-9999").unwrap()).await.unwrap(),
        None
    );
}
