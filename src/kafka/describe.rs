//! kafka::describe: whether each topic exists, its partition count, and what
//! the broker lets herald's principal do with it (Kafka's DescribeTopics with
//! authorized operations, KIP-430), through librdkafka's C API, which the
//! rdkafka crate does not wrap.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::client::{Client, DefaultClientContext};

/// What herald may do with a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowed {
    pub read: bool,
    pub write: bool,
    pub describe_configs: bool,
}

impl Allowed {
    /// From the operations the broker lists, as librdkafka's operation codes
    /// (read as numbers: a code newer than this build is not a variant).
    /// ALL implies every one.
    pub fn from_operations(ops: &[u32]) -> Allowed {
        use rd::rd_kafka_AclOperation_t as Op;
        let has = |op: Op| {
            ops.contains(&(op as u32)) || ops.contains(&(Op::RD_KAFKA_ACL_OPERATION_ALL as u32))
        };
        Allowed {
            read: has(Op::RD_KAFKA_ACL_OPERATION_READ),
            write: has(Op::RD_KAFKA_ACL_OPERATION_WRITE),
            describe_configs: has(Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS),
        }
    }
}

/// One topic as the broker describes it to herald.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Described {
    /// It exists: its partition count, and what herald may do with it
    /// (`None`: the broker does not report authorized operations, as
    /// brokers older than Kafka 2.3).
    Found {
        partitions: i32,
        allowed: Option<Allowed>,
    },
    Missing,
    /// herald's principal may not even describe it.
    Denied,
    Failed(String),
}

/// Describes `topics`, blocking up to `timeout`.
pub fn describe_topics(
    client: &Client<DefaultClientContext>,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, Described>, String> {
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(t.as_str()).map_err(|_| format!("topic name {t:?} has a NUL byte")))
        .collect::<Result<_, _>>()?;
    let mut pointers: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let rk = client.native_ptr();
    // SAFETY: every handle made here is destroyed before returning; the
    // names outlive the call that copies them; the result's strings and
    // arrays are read before the event that owns them is destroyed.
    unsafe {
        let collection =
            rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len());
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        let error = rd::rd_kafka_AdminOptions_set_include_authorized_operations(options, 1);
        if !error.is_null() {
            rd::rd_kafka_error_destroy(error);
        }
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout.as_millis() as i32,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        let started = Instant::now();
        let mut event: *mut rd::rd_kafka_event_t = std::ptr::null_mut();
        while event.is_null() && started.elapsed() < timeout + Duration::from_secs(1) {
            event = rd::rd_kafka_queue_poll(queue, 100);
        }
        let answer = if event.is_null() {
            Err(format!(
                "the brokers did not answer within {} s",
                timeout.as_secs()
            ))
        } else {
            let answer = read_result(event);
            rd::rd_kafka_event_destroy(event);
            answer
        };
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        answer
    }
}

/// Existence and partition counts only, from a metadata request: for
/// brokers that do not answer DescribeTopics (librdkafka's mock cluster).
pub fn describe_by_metadata(
    client: &Client<DefaultClientContext>,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, Described>, String> {
    let metadata = client
        .fetch_metadata(None, timeout)
        .map_err(|e| e.to_string())?;
    Ok(topics
        .iter()
        .map(|name| {
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
            let described = match found {
                Some(t) => Described::Found {
                    partitions: t.partitions().len() as i32,
                    allowed: None,
                },
                None => Described::Missing,
            };
            (name.clone(), described)
        })
        .collect())
}

/// SAFETY: `event` is a live DescribeTopics result event.
unsafe fn read_result(
    event: *mut rd::rd_kafka_event_t,
) -> Result<BTreeMap<String, Described>, String> {
    use rd::rd_kafka_resp_err_t as Err;
    if rd::rd_kafka_event_error(event) != Err::RD_KAFKA_RESP_ERR_NO_ERROR {
        let why = CStr::from_ptr(rd::rd_kafka_event_error_string(event));
        return Err(why.to_string_lossy().into_owned());
    }
    let result = rd::rd_kafka_event_DescribeTopics_result(event);
    if result.is_null() {
        return Err("DescribeTopics: no result".into());
    }
    let mut count = 0usize;
    let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
    let mut out = BTreeMap::new();
    for i in 0..count {
        let d = *descriptions.add(i);
        let name = CStr::from_ptr(rd::rd_kafka_TopicDescription_name(d))
            .to_string_lossy()
            .into_owned();
        let error = rd::rd_kafka_TopicDescription_error(d);
        let described = if !error.is_null() {
            match rd::rd_kafka_error_code(error) {
                Err::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART => Described::Missing,
                Err::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED => Described::Denied,
                _ => Described::Failed(
                    CStr::from_ptr(rd::rd_kafka_error_string(error))
                        .to_string_lossy()
                        .into_owned(),
                ),
            }
        } else {
            let mut partitions = 0usize;
            rd::rd_kafka_TopicDescription_partitions(d, &mut partitions);
            let mut n = 0usize;
            let ops = rd::rd_kafka_TopicDescription_authorized_operations(d, &mut n);
            let allowed = (!ops.is_null()).then(|| {
                Allowed::from_operations(std::slice::from_raw_parts(ops.cast::<u32>(), n))
            });
            Described::Found {
                partitions: partitions as i32,
                allowed,
            }
        };
        out.insert(name, described);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rd::rd_kafka_AclOperation_t as Op;

    #[test]
    fn all_allows_everything_and_read_alone_allows_only_reading() {
        let all = Allowed::from_operations(&[Op::RD_KAFKA_ACL_OPERATION_ALL as u32]);
        assert!(all.read && all.write && all.describe_configs);
        let read = Allowed::from_operations(&[
            Op::RD_KAFKA_ACL_OPERATION_READ as u32,
            Op::RD_KAFKA_ACL_OPERATION_DESCRIBE as u32,
        ]);
        assert!(read.read && !read.write && !read.describe_configs);
    }
}
