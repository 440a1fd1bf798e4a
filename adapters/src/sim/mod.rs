//! Simulators of the external systems tilts talks to, for tests and `tilts demo`: real HTTP
//! servers on real sockets, with fictional data, request recording and fault injection.
//!
//! - [`server`]: the shared machinery ([`SimServer`], [`RecordedRequest`], [`Faults`]) and the
//!   control endpoints every simulator serves, which are neither recorded nor faulted:
//!   `GET /_sim/health`, `GET /_sim/requests` (bodies as text), `DELETE /_sim/requests`,
//!   `GET /_sim/faults` and `POST /_sim/faults` with `{"mode":"fail","status":503,"count":2}`,
//!   `{"mode":"fail_always","status":500}`, `{"mode":"delay","ms":3000}`,
//!   `{"mode":"reset","count":1}` or `{"mode":"none"}` (settings combine; `none` clears all).
//! - `http_kit` (private): the request and answer helpers the HTTP simulators share (bearer
//!   tokens, JSON bodies and field errors, idempotent replays, OAuth2 token endpoints).
//! - [`mod@enterprise_register`]: the Enterprise Register (UR), company lookup and search.
//! - [`mod@address_register`]: the State Address Register (VZD), address lookup and search.
//! - [`mod@social_services`]: a social service's case intake that receives applications.
//! - [`mod@population_register`]: the Population Register (PMLP) person lookup over SOAP: plain
//!   SOAP 1.1/1.2, X-Road 4.0 headers, and the VISS request service (StartTransaction, SubmitSync).
//! - [`mod@xroad_rest`]: an X-Road REST security server in front of the Enterprise Register.
//! - [`mod@dagr`]: the DAGR data platform (REST over mTLS, tokens, permissions).
//! - [`pki`]: a throwaway certificate authority for the mTLS simulators.
//! - [`mod@vpvkac`]: the VPVKAC IS (service catalogue, case status changes).
//! - [`mod@piktaps`]: PIKTAPS, the ICT catalogue (route descriptors with revisions).
//! - [`mod@riga`]: Riga's client-information system (OAuth2, client search, interactions).
//! - [`mod@amqp_institution`]: an institution reached through RabbitMQ (not an HTTP server).
//!
//! The contracts of the three municipal systems are in `mappings/contracts/` and
//! `docs/systems.md`.
//!
//! Each module documents its contract and exports its notable fixtures as constants, so tests
//! and the demo can name them instead of copying numbers.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

pub mod address_register;
pub mod amqp_institution;
pub mod dagr;
pub mod enterprise_register;
mod http_kit;
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

/// Starts the VPVKAC IS simulator (name `vpvkac-is`) on `addr`.
pub async fn vpvkac(addr: SocketAddr) -> io::Result<(SimServer, vpvkac::VpvkacState)> {
    let (router, state) = vpvkac::router_with_state();
    Ok((SimServer::start("vpvkac-is", addr, router).await?, state))
}

/// Starts the PIKTAPS simulator (name `piktaps`) on `addr`.
pub async fn piktaps(addr: SocketAddr) -> io::Result<(SimServer, piktaps::PiktapsState)> {
    let (router, state) = piktaps::router_with_state();
    Ok((SimServer::start("piktaps", addr, router).await?, state))
}

/// Starts the Riga client-information simulator (name `riga-clients`) on `addr`.
pub async fn riga(addr: SocketAddr) -> io::Result<(SimServer, riga::RigaState)> {
    let (router, state) = riga::router_with_state();
    Ok((SimServer::start("riga-clients", addr, router).await?, state))
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
    /// The VPVKAC IS.
    pub vpvkac: SimServer,
    /// What the VPVKAC IS received.
    pub vpvkac_state: vpvkac::VpvkacState,
    /// PIKTAPS.
    pub piktaps: SimServer,
    /// The descriptors PIKTAPS holds.
    pub piktaps_state: piktaps::PiktapsState,
    /// Riga's client-information system.
    pub riga: SimServer,
    /// The interactions Riga's system recorded.
    pub riga_state: riga::RigaState,
}

impl Simulators {
    /// Starts every simulator on `127.0.0.1:0`.
    pub async fn start() -> io::Result<Simulators> {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let (vpvkac, vpvkac_state) = vpvkac(any_port).await?;
        let (piktaps, piktaps_state) = piktaps(any_port).await?;
        let (riga, riga_state) = riga(any_port).await?;
        Ok(Simulators {
            enterprise_register: enterprise_register(any_port).await?,
            address_register: address_register(any_port).await?,
            social_services: social_services(any_port).await?,
            population_register: population_register(any_port).await?,
            vpvkac,
            vpvkac_state,
            piktaps,
            piktaps_state,
            riga,
            riga_state,
        })
    }

    /// Every simulator, e.g. to clear faults or recordings between test steps.
    pub fn all(&self) -> [&SimServer; 7] {
        [
            &self.enterprise_register,
            &self.address_register,
            &self.social_services,
            &self.population_register,
            &self.vpvkac,
            &self.piktaps,
            &self.riga,
        ]
    }

    /// Stops every simulator gracefully.
    pub async fn shutdown(self) {
        let Simulators {
            enterprise_register,
            address_register,
            social_services,
            population_register,
            vpvkac,
            piktaps,
            riga,
            ..
        } = self;
        tokio::join!(
            enterprise_register.shutdown(),
            address_register.shutdown(),
            social_services.shutdown(),
            population_register.shutdown(),
            vpvkac.shutdown(),
            piktaps.shutdown(),
            riga.shutdown()
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
        assert_eq!(urls.len(), 7);
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
                "population-register",
                "vpvkac-is",
                "piktaps",
                "riga-clients"
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
        let services = reqwest::Client::new()
            .get(format!("{}/api/v1/services", sims.vpvkac.url()))
            .bearer_auth(vpvkac::TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(services.status(), 200);
        let listed = reqwest::Client::new()
            .get(format!(
                "{}/api/v1/descriptors/{}",
                sims.piktaps.url(),
                piktaps::SYSTEM_CODE
            ))
            .bearer_auth(piktaps::TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), 200);
        let token = reqwest::Client::new()
            .post(format!("{}{}", sims.riga.url(), riga::TOKEN_PATH))
            .basic_auth(riga::CLIENT_ID, Some(riga::CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(token.status(), 200);
        // Each simulator recorded only its own request.
        for sim in sims.all() {
            assert_eq!(sim.requests().len(), 1, "{}", sim.name());
        }
        sims.shutdown().await;
    }
}
