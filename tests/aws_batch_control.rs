//! Batch control on the AWS path, on moto with the compiled binary's Lambda roles and the
//! admin service on the stack (`serve --backend aws`): a failure budget stops a batch, a
//! redrive's chunks start as new executions through the request table's stream, and a paused
//! batch starts nothing until it is resumed.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use batch_manager::domain::{BatchId, BatchStatus};
use batch_manager::grpc::pb;
use batch_manager::grpc::pb::batch_manager_client::BatchManagerClient;
use batch_manager::store::BatchStore;
use common::lambda::{run_to_end, ChunkFunctions, MotoStack};
use tonic::transport::Channel;

const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// A stack on moto, its `init` and chunk functions, and a client of the admin service on it.
async fn deploy(
    prefix: &str,
) -> (
    MotoStack,
    common::lambda::LambdaFunction,
    Arc<ChunkFunctions>,
    batch_manager::app::AwsApp,
    BatchManagerClient<Channel>,
) {
    let stack = MotoStack::deploy(prefix).await;
    let (init, functions) = tokio::join!(stack.function("init"), ChunkFunctions::start(&stack));
    let app = stack.serve().await;
    let client = common::connect(app.grpc_addr).await;
    (stack, init, Arc::new(functions), app, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_a_batch_on_aws_and_a_redrive_runs_its_failed_chunks_as_new_executions() {
    let (stack, init, functions, _app, mut client) = deploy("control-budget").await;
    client
        .submit_batch(pb::SubmitBatchRequest {
            max_concurrency: 1,
            tolerated_failure_percentage: Some(10),
            ..common::submit_request("budget-on-aws", common::half_bad(100), 4)
        })
        .await
        .expect("SubmitBatch");
    let batch_id = BatchId::parse("budget-on-aws").unwrap();
    let stopped = run_to_end(
        &stack,
        &init,
        Arc::clone(&functions),
        &batch_id,
        RUN_DEADLINE,
        |_| {},
    )
    .await;
    assert_eq!(stopped.status, BatchStatus::Failed, "{stopped:?}");
    assert_eq!(
        stopped.failure_reason.as_deref(),
        Some("failure budget exceeded: 12 of 100 items failed, 10% tolerated"),
        "{stopped:?}"
    );
    // Six chunks ran, one at a time; the seventh may have been claimed in the moment between
    // the sixth's count and the stop, and then ran; the others never started.
    assert_eq!(stopped.succeeded_items, stopped.failed_items, "{stopped:?}");
    assert!([12, 14].contains(&stopped.failed_items), "{stopped:?}");
    assert_eq!(
        stopped.cancelled_items,
        100 - 2 * stopped.failed_items,
        "{stopped:?}"
    );
    let names_before: HashSet<String> = stack.execution_names().await.into_iter().collect();

    let redriven = common::redrive(&mut client, "budget-on-aws", true)
        .await
        .unwrap();
    assert_eq!(redriven.redriven_items, 100 - stopped.succeeded_items);
    let running = redriven.batch.expect("batch");
    assert_eq!(running.redrive_count, 1);
    assert_eq!(running.failure_reason, "");
    assert_eq!(
        (
            running.succeeded_items,
            running.failed_items,
            running.cancelled_items
        ),
        (stopped.succeeded_items, 0, 0)
    );

    let ended = run_to_end(&stack, &init, functions, &batch_id, RUN_DEADLINE, |_| {}).await;
    assert_eq!(ended.redrive_count, 1);
    // The bad IDs fail again: the budget stops the redrive's run too, as exactly.
    assert_eq!(ended.status, BatchStatus::Failed, "{ended:?}");
    assert_eq!(
        ended.succeeded_items + ended.failed_items + ended.cancelled_items,
        100
    );
    assert!(ended.failed_items > 10, "{ended:?}");
    let redrive_names: Vec<String> = stack
        .execution_names()
        .await
        .into_iter()
        .filter(|name| !names_before.contains(name))
        .collect();
    assert!(!redrive_names.is_empty());
    for name in &redrive_names {
        assert!(
            name.ends_with("-r1"),
            "a redrive's execution is named apart: {name}"
        );
    }
    let listed = common::all_items(&mut client, "budget-on-aws", pb::ItemStatus::Unspecified).await;
    assert_eq!(listed.len(), 100);
    let succeeded = listed
        .iter()
        .filter(|item| item.status() == pb::ItemStatus::Succeeded)
        .count() as u64;
    assert_eq!(succeeded, ended.succeeded_items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_batch_on_aws_starts_nothing_until_it_is_resumed() {
    let (stack, init, functions, _app, mut client) = deploy("control-pause").await;
    client
        .submit_batch(pb::SubmitBatchRequest {
            max_concurrency: 2,
            ..common::submit_request("paused-on-aws", common::uuids(40), 4)
        })
        .await
        .expect("SubmitBatch");
    let paused = common::pause(&mut client, "paused-on-aws").await.unwrap();
    assert_eq!(paused.status(), pb::BatchStatus::Paused);
    // The part's stream records reach init: a paused batch claims no start.
    for _ in 0..3 {
        stack.deliver_stream(&init).await;
    }
    assert!(
        stack.execution_names().await.is_empty(),
        "nothing starts while paused"
    );
    let store = stack.store();
    let batch_id = BatchId::parse("paused-on-aws").unwrap();
    let held = store.get_batch(&batch_id).await.unwrap().unwrap();
    assert_eq!(held.status, BatchStatus::Paused);
    assert_eq!(held.completed_chunks, 0);

    common::resume(&mut client, "paused-on-aws").await.unwrap();
    let ended = run_to_end(&stack, &init, functions, &batch_id, RUN_DEADLINE, |round| {
        assert!(round.in_flight() <= 2, "{round:?}");
    })
    .await;
    assert_eq!(ended.status, BatchStatus::Completed, "{ended:?}");
    assert_eq!(ended.succeeded_items, 40);
}
