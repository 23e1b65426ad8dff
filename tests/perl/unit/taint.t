#!/usr/bin/perl -T

# vzdump, qmrestore and pct run under perl -T. What the daemon sends is untrusted; what the shim
# returns must be untainted where it can reach a path or a command, and only values of the
# expected shape may come through.

use strict;
use warnings;

use Test::More;

use File::Temp qw(tempdir);
use Scalar::Util qw(tainted);

use DirBackupTest::FakeDaemon;
use PVE::DirBackup::Client qw(untaint_volname untaint_int untaint_path untaint_word);
use PVE::Storage::Custom::DirBackupPlugin;

ok(${^TAINT}, 'running under -T');

my $plugin = 'PVE::Storage::Custom::DirBackupPlugin';
my $SCFG = { type => 'dirbackup', path => '/tmp/st1' };
my $VOLNAME = 'backup/100/qemu-1700000000';

my ($dir) = tempdir('dirbackup-taint-XXXXXX', TMPDIR => 1, CLEANUP => 1) =~ m!^(/[\w./\-]+)$!;
my $file = "$dir/100/qemu-1700000000";
mkdir("$dir/100") or die $!;
open(my $fh, '>', $file) or die $!;
close($fh);

# a tainted copy of any string: concatenation with a tainted empty string
my $TAINT = substr($ENV{PATH} // $0, 0, 0);
ok(tainted($TAINT), 'test can make tainted values');
sub tainted_copy { return $_[0] . $TAINT }

my $d = DirBackupTest::FakeDaemon->new(handler => sub {
    my ($req) = @_;
    my $m = $req->{method};
    return [reply => { path => $file, vmid => 100, vtype => 'backup' }] if $m eq 'path';
    return [reply => { vtype => 'backup', name => '100/qemu-1700000000', vmid => 100, format => 'directory' }]
        if $m eq 'parse_volname';
    return [reply => [{ volid => "st1:$VOLNAME", content => 'backup', format => 'directory', size => 1,
        ctime => 1700000000, vmid => 100, subtype => 'qemu' }]] if $m eq 'list_volumes';
    return [reply => { 'qemu-img-path' => $file }] if $m eq 'restore_vm_volume_init';
    return [reply => { 'archive-name' => '100/qemu-1700000000' }] if $m eq 'backup_init';
    return [reply => { path => "$dir/../etc/passwd", vmid => 100, vtype => 'backup' }] if $m eq 'filesystem_path';
    return;
});

subtest 'values from the socket usable under -T' => sub {
    my ($path, $vmid, $vtype) = $plugin->path($SCFG, $VOLNAME, 'st1');
    ok(!tainted($path), 'path untainted');
    ok(-e $path, 'path passes -e');
    my $ok = eval { open(my $w, '>>', $path) or die "open: $!\n"; close($w); 1 };
    ok($ok, 'path opens for writing under -T') or diag($@);
    ok(!tainted($vmid) && !tainted($vtype), 'vmid and vtype untainted');

    my @v = $plugin->parse_volname($VOLNAME);
    ok(!grep({ defined($_) && tainted($_) } @v), 'parse_volname results untainted');

    my $list = $plugin->list_volumes('st1', $SCFG);
    ok(!grep({ tainted($_) } map { values %$_ } @$list), 'list_volumes values untainted');

    my $provider = $plugin->new_backup_provider($SCFG, 'st1', sub { });
    my $img = $provider->restore_vm_volume_init($VOLNAME, 'drive-scsi0', {});
    ok(!tainted($img->{'qemu-img-path'}), 'qemu-img-path untainted');
    ok(-e $img->{'qemu-img-path'}, 'qemu-img-path passes -e');
    my $name = $provider->backup_init(100, 'qemu', 1700000000)->{'archive-name'};
    ok(!tainted($name), 'archive name untainted');

    eval { $plugin->filesystem_path($SCFG, $VOLNAME) };
    like($@, qr/^dirbackupd returned an invalid path: /, "a path with '..' from the daemon is refused");
};

subtest 'untaint helpers: per-field patterns' => sub {
    ok(!tainted(untaint_volname(tainted_copy('backup/100/qemu-1700000000'))), 'volname untainted');
    ok(!tainted(untaint_volname(tainted_copy('st1:backup/vm/100/2025-01-01T00:00:00Z'))), 'volid with colons');
    ok(!tainted(untaint_int(tainted_copy('-12'))), 'integer');
    ok(!tainted(untaint_path(tainted_copy('/run/dirbackupd/x y'))), 'path');
    ok(!tainted(untaint_word(tainted_copy('qemu-img'))), 'word');
    is(untaint_int('0042'), 42, 'integers come back as numbers');
    is(untaint_path(undef), undef, 'undef stays undef');

    my @bad = (
        [\&untaint_volname, 'backup/100/x y'], [\&untaint_volname, "backup/100\n"], [\&untaint_volname, ''],
        [\&untaint_volname, 'backup/$(reboot)'], [\&untaint_volname, 'backup/../etc'],
        [\&untaint_int, '12a'], [\&untaint_int, '1.5'], [\&untaint_int, ''],
        [\&untaint_path, 'relative/path'], [\&untaint_path, '/a/../b'], [\&untaint_path, '/a/..'],
        [\&untaint_path, "/a\nb"], [\&untaint_path, "/a\0b"], [\&untaint_path, "/a\n"],
        [\&untaint_int, "12\n"], [\&untaint_word, "qemu\n"],
        [\&untaint_word, 'Qemu'], [\&untaint_word, 'tar path'], [\&untaint_word, 'a/b'],
    );
    for my $case (@bad) {
        my ($fn, $value) = @$case;
        eval { $fn->(tainted_copy($value)) };
        like($@, qr/^dirbackupd returned an invalid .*\n\z/, 'refused: ' . ($value =~ s/\n/\\n/r =~ s/\0/\\0/r));
    }
};

done_testing();
