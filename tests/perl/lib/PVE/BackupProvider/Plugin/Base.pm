package PVE::BackupProvider::Plugin::Base;

# Test stand-in for pve-storage's src/PVE/BackupProvider/Plugin/Base.pm: the same methods with
# the same signatures, each dying like the real one, so a method the provider forgot to
# implement fails loudly in the tests.

use strict;
use warnings;

sub new {
    my ($class, $storage_plugin, $scfg, $storeid, $log_function) = @_;
    die "implement me in subclass";
}

sub provider_name { my ($self) = @_; die "implement me in subclass"; }
sub job_init { my ($self, $start_time) = @_; die "implement me in subclass"; }
sub job_cleanup { my ($self) = @_; die "implement me in subclass"; }
sub backup_init { my ($self, $vmid, $vmtype, $start_time) = @_; die "implement me in subclass"; }
sub backup_cleanup { my ($self, $vmid, $vmtype, $success, $info) = @_; die "implement me in subclass"; }
sub backup_get_mechanism { my ($self, $vmid, $vmtype) = @_; die "implement me in subclass"; }
sub backup_handle_log_file { my ($self, $vmid, $filename) = @_; die "implement me in subclass"; }
sub backup_vm_query_incremental { my ($self, $vmid, $volumes) = @_; die "implement me in subclass"; }
sub backup_vm { my ($self, $vmid, $guest_config, $volumes, $info) = @_; die "implement me in subclass"; }
sub backup_container_prepare { my ($self, $vmid, $info) = @_; die "implement me in subclass"; }

sub backup_container {
    my ($self, $vmid, $guest_config, $exclude_patterns, $info) = @_;
    die "implement me in subclass";
}

sub restore_get_mechanism { my ($self, $volname) = @_; die "implement me in subclass"; }
sub archive_get_guest_config { my ($self, $volname) = @_; die "implement me in subclass"; }
sub archive_get_firewall_config { my ($self, $volname) = @_; die "implement me in subclass"; }
sub restore_vm_init { my ($self, $volname) = @_; die "implement me in subclass"; }
sub restore_vm_cleanup { my ($self, $volname) = @_; die "implement me in subclass"; }
sub restore_vm_volume_init { my ($self, $volname, $device_name, $info) = @_; die "implement me in subclass"; }

sub restore_vm_volume_cleanup {
    my ($self, $volname, $device_name, $info) = @_;
    die "implement me in subclass";
}

sub restore_container_init { my ($self, $volname, $info) = @_; die "implement me in subclass"; }
sub restore_container_cleanup { my ($self, $volname, $info) = @_; die "implement me in subclass"; }

1;
