//! An AWS Batch job queue and job definition of their own on a moto server, whose AWS Batch runs
//! without Docker: every job ends as soon as it is submitted (failing on a server started with
//! `MOTO_SIMPLE_BATCH_FAIL_AFTER=0`).

use aws_sdk_batch::types::{
    CeState, CeType, ComputeEnvironmentOrder, ContainerProperties, JobDefinitionType, JobDetail,
    JobSummary, JqState, KeyValuesPair, ResourceRequirement, ResourceType,
};

use super::moto::sdk_config;

/// A queue and job definition on one moto server.
pub(crate) struct BatchQueue {
    pub client: aws_sdk_batch::Client,
    pub queue: String,
    pub definition: String,
}

impl BatchQueue {
    /// Creates a compute environment, a queue and a job definition with unique names on the
    /// moto server at `endpoint`, after switching its AWS Batch to the Docker-free one.
    pub(crate) async fn create(endpoint: &str) -> Self {
        use_batch_without_docker(endpoint).await;
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let role_arn = create_service_role(endpoint, &format!("batch-service-{unique}")).await;
        let client = aws_sdk_batch::Client::new(&sdk_config(endpoint).await);
        let environment = client
            .create_compute_environment()
            .compute_environment_name(format!("jobs-{unique}"))
            .r#type(CeType::Unmanaged)
            .state(CeState::Enabled)
            .service_role(role_arn)
            .send()
            .await
            .expect("create a compute environment");
        let queue = format!("queue-{unique}");
        client
            .create_job_queue()
            .job_queue_name(&queue)
            .priority(1)
            .state(JqState::Enabled)
            .compute_environment_order(
                ComputeEnvironmentOrder::builder()
                    .order(1)
                    .compute_environment(environment.compute_environment_arn().unwrap())
                    .build(),
            )
            .send()
            .await
            .expect("create a job queue");
        let definition = format!("task-{unique}");
        client
            .register_job_definition()
            .job_definition_name(&definition)
            .r#type(JobDefinitionType::Container)
            .container_properties(
                ContainerProperties::builder()
                    .image("public.ecr.aws/docker/library/python:3-slim")
                    .command("python3")
                    .command("task.py")
                    .command("Ref::batchId")
                    .resource_requirements(requirement(ResourceType::Vcpu, "1"))
                    .resource_requirements(requirement(ResourceType::Memory, "512"))
                    .build(),
            )
            .send()
            .await
            .expect("register a job definition");
        Self {
            client,
            queue,
            definition,
        }
    }

    /// The job, as DescribeJobs tells it.
    pub(crate) async fn describe(&self, job_id: &str) -> JobDetail {
        self.client
            .describe_jobs()
            .jobs(job_id)
            .send()
            .await
            .expect("DescribeJobs")
            .jobs()
            .first()
            .cloned()
            .expect("the job is described")
    }

    /// The top-level jobs in the queue (array children excluded), optionally only those named
    /// `name`.
    pub(crate) async fn jobs(&self, name: Option<&str>) -> Vec<JobSummary> {
        let mut request = self.client.list_jobs().job_queue(&self.queue);
        request = match name {
            Some(name) => request.filters(
                KeyValuesPair::builder()
                    .name("JOB_NAME")
                    .values(name)
                    .build(),
            ),
            // Without a filter ListJobs lists one status; a filter on every name lists all.
            None => request.filters(
                KeyValuesPair::builder()
                    .name("JOB_NAME")
                    .values("*")
                    .build(),
            ),
        };
        request
            .send()
            .await
            .expect("ListJobs")
            .job_summary_list()
            .iter()
            .filter(|job| !job.job_id().unwrap().contains(':'))
            .cloned()
            .collect()
    }
}

fn requirement(kind: ResourceType, value: &str) -> ResourceRequirement {
    ResourceRequirement::builder()
        .r#type(kind)
        .value(value)
        .build()
}

/// Switches the server's AWS Batch to its Docker-free implementation.
async fn use_batch_without_docker(endpoint: &str) {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/moto-api/config"))
        .json(&serde_json::json!({"batch": {"use_docker": false}}))
        .send()
        .await
        .expect("configure moto");
    assert!(response.status().is_success(), "{response:?}");
}

/// Creates the IAM role a compute environment needs and returns its ARN. IAM is set up with
/// one query request rather than a whole SDK crate for one call; moto routes it by the service
/// named in the (unchecked) signature.
async fn create_service_role(endpoint: &str, name: &str) -> String {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"batch.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let response = reqwest::Client::new()
        .post(endpoint)
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .form(&[
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", name),
            ("AssumeRolePolicyDocument", trust),
        ])
        .send()
        .await
        .expect("CreateRole");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "CreateRole: {status} {body}");
    let start = body.find("<Arn>").expect("the role's ARN") + "<Arn>".len();
    let end = body[start..].find("</Arn>").expect("the role's ARN") + start;
    body[start..end].to_owned()
}
