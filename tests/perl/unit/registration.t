#!/usr/bin/perl -T

# The class methods PVE calls while loading storage.cfg, before any daemon could answer: they are
# answered in Perl, must never need the socket, and must follow PVE's loading rules (2.1, 2.2).

use strict;
use warnings;

use Test::More;

use PVE::Storage;
use PVE::Storage::Custom::DirBackupPlugin;
use PVE::BackupProvider::Plugin::DirBackup;

my $plugin = 'PVE::Storage::Custom::DirBackupPlugin';

# nothing here may reach a daemon
$ENV{DIRBACKUP_SOCKET} = '/nonexistent/dirbackupd.sock';

ok($plugin->isa('PVE::Storage::Plugin'), 'storage plugin derives from PVE::Storage::Plugin');
ok('PVE::BackupProvider::Plugin::DirBackup'->isa('PVE::BackupProvider::Plugin::Base'),
    'provider derives from the provider base');

subtest 'api() negotiates with PVE::Storage::APIVER' => sub {
    is($plugin->api, 15, 'current PVE (APIVER 15) gets 15');
    no warnings 'redefine';
    for my $case ([11, 11], [12, 12], [13, 13], [14, 14], [15, 15], [16, 15], [30, 15], [9, 11]) {
        my ($apiver, $want) = @$case;
        local *PVE::Storage::APIVER = sub { $apiver };
        is($plugin->api, $want, "APIVER $apiver -> api $want");
    }
    {
        # PVE's own acceptance rule for every APIVER we claim to support
        for my $pair ([11, 2], [12, 3], [13, 4], [14, 5], [15, 6]) {
            my ($apiver, $apiage) = @$pair;
            local *PVE::Storage::APIVER = sub { $apiver };
            my $api = $plugin->api;
            ok($api <= $apiver && $api >= $apiver - $apiage, "accepted by a PVE with APIVER $apiver");
        }
    }
    {
        local *PVE::Storage::APIVER;    # an empty glob: no APIVER at all
        ok(!PVE::Storage->can('APIVER'), 'APIVER hidden');
        is($plugin->api, 11, 'without APIVER: 11 (PVE 8.4)');
    }
};

is($plugin->type, 'dirbackup', 'type');

is_deeply($plugin->plugindata, {
    content => [{ backup => 1, none => 1 }, { backup => 1 }],
    features => { 'backup-provider' => 1 },
    'sensitive-properties' => {},
}, 'plugindata: backup content, backup-provider feature, no sensitive properties');

subtest 'properties() and options()' => sub {
    my $props = $plugin->properties;
    is(ref($props), 'HASH', 'properties is a hash');
    for my $name (keys %$props) {
        like($name, qr/^dirbackup-/, "new property '$name' carries the dirbackup- prefix");
    }
    is_deeply($plugin->options, {
        path => { fixed => 1 },
        nodes => { optional => 1 },
        disable => { optional => 1 },
        content => { optional => 1 },
        shared => { optional => 1 },
        'max-protected-backups' => { optional => 1 },
        'prune-backups' => { optional => 1 },
        'dirbackup-vm-mode' => { optional => 1 },
        'dirbackup-ct-format' => { optional => 1 },
    }, 'options: path fixed, the rest optional, prune-backups offered');
    is_deeply($props->{'dirbackup-ct-format'}->{enum}, ['tar', 'squashfs'], 'container format: tar or squashfs');
    is_deeply($props->{'dirbackup-vm-mode'}->{enum}, ['incremental', 'full'], 'VM mode: incremental or full');
    is($props->{'dirbackup-vm-mode'}->{default}, 'incremental', 'VM backups are incremental unless set otherwise');
    for my $name (keys %$props) {
        ok($plugin->options->{$name}, "property '$name' is settable through options()");
    }
};

subtest 'new_backup_provider' => sub {
    my @logged;
    my $scfg = { type => 'dirbackup', path => '/tmp/store' };
    my $p = $plugin->new_backup_provider($scfg, 'store1', sub { push @logged, [@_] });
    isa_ok($p, 'PVE::BackupProvider::Plugin::DirBackup');
    is($p->{storage_plugin}, $plugin, 'storage plugin class kept');
    is($p->{scfg}, $scfg, 'scfg kept');
    is($p->{storeid}, 'store1', 'storeid kept');
    $p->{log_function}->('info', 'x');
    is_deeply(\@logged, [['info', 'x']], 'log function kept');
    is($p->provider_name, 'dirbackup', 'provider_name answered locally');
};

subtest 'inherited methods stay with PVE::Storage::Plugin' => sub {
    for my $m (qw(get_identity qemu_blockdev_options volume_rollback_is_possible volume_snapshot_info
        volume_snapshot_needs_fsfreeze storage_can_replicate))
    {
        is($plugin->can($m), PVE::Storage::Plugin->can($m), "$m is inherited");
    }
};

done_testing();
