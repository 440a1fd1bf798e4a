//! Simulators of the external systems tilts talks to, for tests and `tilts demo`: real HTTP
//! servers on real sockets, with fictional data, request recording and fault injection.
//!
//! - [`server`]: the shared machinery ([`SimServer`], [`RecordedRequest`], [`Faults`]) and the
//!   control endpoints every simulator serves, which are neither recorded nor faulted:
//!   `GET /_sim/health`, `GET /_sim/requests` (bodies as text), `DELETE /_sim/requests`,
//!   `GET /_sim/faults` and `POST /_sim/faults` with `{"mode":"fail","status":503,"count":2}`,
//!   `{"mode":"fail_always","status":500}`, `{"mode":"delay","ms":3000}`,
//!   `{"mode":"reset","count":1}` or `{"mode":"none"}` (settings combine; `none` clears all).
//! - [`mod@enterprise_register`]: the Enterprise Register (UR), company lookup and search.
//! - [`mod@address_register`]: the State Address Register (VZD), address lookup and search.
//! - [`mod@social_services`]: a social service's case intake that receives applications.
//! - [`mod@population_register`]: the Population Register (PMLP) person lookup over SOAP: plain
//!   SOAP 1.1/1.2, X-Road 4.0 headers, and the VISS request service (StartTransaction, SubmitSync).
//! - [`mod@xroad_rest`]: an X-Road REST security server in front of the Enterprise Register.
//! - [`mod@dagr`]: the DAGR data platform (REST over mTLS, tokens, permissions).
//! - [`pki`]: a throwaway certificate authority for the mTLS simulators.
//!
//! Each module documents its contract and exports its notable fixtures as constants, so tests
//! and the demo can name them instead of copying numbers.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

pub mod address_register;
pub mod amqp_institution;
pub mod dagr;
pub mod enterprise_register;
pub mod piktaps;
pub mod pki;
pub mod population_register;
pub mod riga;
pub mod server;
pub mod social_services;
pub mod vpvkac;
pub mod xroad_rest;

pub use server::{Faults, RecordedRequest, SimServer};

/// Starts the Enterprise Register simulator (name `enterprise-register`) on `addr`.
pub async fn enterprise_register(addr: SocketAddr) -> io::Result<SimServer> {
    SimServer::start("enterprise-register", addr, enterprise_register::router()).await
}

/// Starts the State Address Register simulator (name `address-register`) on `addr`.
pub async fn address_register(addr: SocketAddr) -> io::Result<SimServer> {
    SimServer::start("address-register", addr, address_register::router()).await
}

/// Starts the social services case intake simulator (name `social-services`) on `addr`, with an
/// empty case register.
pub async fn social_services(addr: SocketAddr) -> io::Result<SimServer> {
    SimServer::start("social-services", addr, social_services::router()).await
}

/// Starts the Population Register simulator (name `population-register`) on `addr`.
pub async fn population_register(addr: SocketAddr) -> io::Result<SimServer> {
    SimServer::start("population-register", addr, population_register::router()).await
}

/// All simulators, each on its own free port of 127.0.0.1.
#[derive(Debug)]
pub struct Simulators {
    /// The Enterprise Register (UR).
    pub enterprise_register: SimServer,
    /// The State Address Register (VZD).
    pub address_register: SimServer,
    /// The social services case intake.
    pub social_services: SimServer,
    /// The Population Register (PMLP), SOAP.
    pub population_register: SimServer,
}

impl Simulators {
    /// Starts every simulator on `127.0.0.1:0`.
    pub async fn start() -> io::Result<Simulators> {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Ok(Simulators {
            enterprise_register: enterprise_register(any_port).await?,
            address_register: address_register(any_port).await?,
            social_services: social_services(any_port).await?,
            population_register: population_register(any_port).await?,
        })
    }

    /// Every simulator, e.g. to clear faults or recordings between test steps.
    pub fn all(&self) -> [&SimServer; 4] {
        [
            &self.enterprise_register,
            &self.address_register,
            &self.social_services,
            &self.population_register,
        ]
    }

    /// Stops every simulator gracefully.
    pub async fn shutdown(self) {
        let Simulators {
            enterprise_register,
            address_register,
            social_services,
            population_register,
        } = self;
        tokio::join!(
            enterprise_register.shutdown(),
            address_register.shutdown(),
            social_services.shutdown(),
            population_register.shutdown()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_gives_distinct_working_simulators() {
        let sims = Simulators::start().await.unwrap();
        let urls: std::collections::HashSet<String> = sims.all().iter().map(|s| s.url()).collect();
        assert_eq!(urls.len(), 4);
        for sim in sims.all() {
            assert!(sim.url().starts_with("http://127.0.0.1:"));
            let health: serde_json::Value = reqwest::get(format!("{}/_sim/health", sim.url()))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(health["simulator"], sim.name());
        }
        let names: Vec<&str> = sims.all().iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "enterprise-register",
                "address-register",
                "social-services",
                "population-register"
            ]
        );

        let company = reqwest::get(format!(
            "{}/companies/{}",
            sims.enterprise_register.url(),
            enterprise_register::MUNICIPALITY
        ))
        .await
        .unwrap();
        assert_eq!(company.status(), 200);
        let address = reqwest::get(format!(
            "{}/addresses/{}",
            sims.address_register.url(),
            address_register::RIGA
        ))
        .await
        .unwrap();
        assert_eq!(address.status(), 200);
        let case = reqwest::Client::new()
            .post(format!("{}/cases", sims.social_services.url()))
            .json(&serde_json::json!({
                "applicationId": "APP-1", "serviceCode": "SOC-1",
                "applicant": {"personalCode": "150285-10005"}
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(case.status(), 201);
        let envelope = format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetPerson xmlns="urn:x-tilts-sim:pmlp:person:v1"><PersonalCode>{}</PersonalCode></GetPerson></s:Body></s:Envelope>"#,
            population_register::ACTIVE
        );
        let person = reqwest::Client::new()
            .post(format!(
                "{}{}",
                sims.population_register.url(),
                population_register::PERSON_PATH
            ))
            .header("content-type", "text/xml; charset=utf-8")
            .header("soapaction", "\"\"")
            .body(envelope)
            .send()
            .await
            .unwrap();
        assert_eq!(person.status(), 200);
        assert!(person.text().await.unwrap().contains("GetPersonResponse"));
        // Each simulator recorded only its own request.
        for sim in sims.all() {
            assert_eq!(sim.requests().len(), 1, "{}", sim.name());
        }
        sims.shutdown().await;
    }
}
